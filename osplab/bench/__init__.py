"""osplab.bench: benchmark library code called by the benchmark notebooks.

Functions time things (median of interleaved repeats after warm-up; compile time measured
separately) and turn times into achieved GFLOP/s with the FLOP formulas stated beside them.
Nothing here asserts a speed: targets are checked as ratios in the reports.
"""
