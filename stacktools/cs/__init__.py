"""A ``.cs`` dataset in memory: the :class:`~.dataset.CsDataset` class and what it does.

:mod:`.dataset` (the class), :mod:`.rows` (set algebra, joins, field selection on
structured arrays), :mod:`.arrays` (vectorised helpers), :mod:`.query` (the
``--where`` language), :mod:`.info` (what a file holds), :mod:`.subsets` (splits
and samples), :mod:`.dedupe` (duplicate particles), :mod:`.relion` (the
CryoSPARC ⇄ RELION field mapping) and :mod:`.rotation` (orientations).
"""
