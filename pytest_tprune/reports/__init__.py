"""Run reports: their schema, one atomic writer, compare, render, merge and the zoo table.

Only the standard library is imported here, and nothing from the other layers
but :mod:`pytest_tprune.errors`, so CI can compare, merge and tabulate reports
without torch; every other layer may import this one.
"""
