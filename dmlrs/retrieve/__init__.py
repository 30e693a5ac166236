"""Search an image archive with a trained model (``python -m dmlrs.retrieve``).

* :mod:`~dmlrs.retrieve.model`   -- load a checkpoint as an :class:`Encoder` (float embeddings or
  packed binary codes), with the run folder's config.json for older checkpoints.
* :mod:`~dmlrs.retrieve.archive` -- list the images of a folder tree and encode them in batches.
* :mod:`~dmlrs.retrieve.index`   -- the archive index file, refreshed incrementally.
* :mod:`~dmlrs.retrieve.schedule` -- when the index is written while it is being embedded.
* :mod:`~dmlrs.retrieve.rank`    -- exact torch ranking (cosine / Hamming), or faiss when installed.
* :mod:`~dmlrs.retrieve.report`  -- the table per query, retrieval.json and the gallery PNG.
* :mod:`~dmlrs.retrieve.cli`     -- the command line.
"""
