"""Multimodal retrieval: the index (CLIP + MiniLM embeddings in FAISS, metadata in SQLite), the
rag worker (`jobhive-worker rag`, the rag_search endpoint) and the grounding rag_chat shares.

    index.py      RagIndex: create, add, search (built by `jobhive-index`, workers/index_cli.py)
    read.py       reading sources: text, HTML, PDF, images, into chunks
    embed.py      the text and CLIP embedders
    vectors.py    the FAISS indexes (flat, then IVF past a size)
    meta.py       the index's SQLite metadata
    results.py    hits and their fusion across indexes (reciprocal rank fusion)
    grounding.py  opening an index from a worker's options; sources and citations for rag_chat
    worker.py     RagWorker
"""
