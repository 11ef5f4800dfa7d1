"""Official-parity metrics (``metrics``), paired bootstrap and its breakdown by moment length,
the tune/report split and the duration-shifted benchmark sets.
"""
