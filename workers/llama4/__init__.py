"""The Llama 4 chat worker (`jobhive-worker llama4`): streamed tokens, batched chats, 4-bit
option; with `--index` it serves rag_chat from a retrieval index (workers/rag/grounding.py)."""
