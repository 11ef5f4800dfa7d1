"""Every way to call GranAlign from outside: the CLI, the benchmark and experiment runners.

They drive the compiled graph, so a benchmark number is a number about the product.
"""
