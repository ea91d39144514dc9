"""ABEX augmentation: an LLM abstracts each minority-class report, a generator expands each
abstract into k new reports, filters drop the bad ones, and the rest form a pool (Parquet).

- ``config``: the pydantic :class:`~abexrat.augment.config.AugmentConfig`
- ``prompts``: the versioned abstraction and expansion prompts
- ``engines``: generation engines on Ray Data (``transformers`` actors, ``vllm`` via ``ray.data.llm``)
- ``filters``: length, exact / near duplicates, label consistency
- ``pipeline``: the Ray Data pipeline, the content-addressed chunk cache, the pool writer
- ``published``: the paper's own synthetic rows as a pool
- ``cli``: ``abexrat augment run`` and ``abexrat augment import-published``
"""
