"""Schema revisions: 0001 chat history, 0002 knowledge (documents, chunks, full-text index)."""
