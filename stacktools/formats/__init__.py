"""Bytes ⇄ arrays: the file formats stacktools reads and writes, and nothing above them.

:mod:`.cs` (CryoSPARC ``.cs``), :mod:`.mrc` (MRC stacks), :mod:`.star` (RELION STAR
text), :mod:`.tabular` (pandas, CSV, Parquet) and :mod:`.atomic` (the one way any
output reaches its final name).
"""
