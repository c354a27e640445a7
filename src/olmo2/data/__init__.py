"""The OLMo 2 data pipeline (spec §4): documents -> token files -> mixes -> training instances.

``documents`` reads Dolma-style documents and ``tokenize`` turns them into token files. ``token_files``
defines that on-disk format (raw uint32 arrays, as written by Dolma/OLMo) and reads it. ``mix`` picks
the files and shares a run uses, and ``loader`` cuts them into shuffled fixed-length instances.
Submodules are imported on demand, so ``import olmo2.data`` stays cheap.
"""
