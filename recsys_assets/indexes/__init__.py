"""FAISS retrieval and cold-start indexes."""
