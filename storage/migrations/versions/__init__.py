"""Schema revisions: 0001 chat history, 0002 knowledge (documents, chunks, full-text index), 0003 the outbox
(pending replies), 0004 private documents (owner), 0005 typed knowledge (entry and section columns, names,
relations)."""
