"""Official-parity metrics (``metrics``), paired bootstrap, the tune/report split and the
duration-shifted benchmark sets.
"""
