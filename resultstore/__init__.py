"""The results store: one schema (:mod:`resultstore.schema`), one atomic writer and
one reader (:mod:`resultstore.files`), shared by ``experiments`` (jobs, collect,
verify, the real-model section), ``theory.verify`` and ``figures``. It imports
neither of them (pandas, pyarrow and pyyaml only), so every layer may read it.
"""
