"""The RAG comparison: documents indexed into a vector store, answers with retrieved context
put side by side with the model's own, and a scoreboard of which one people prefer.

    documents.py   a folder of Markdown, text, HTML and PDF files -> LangChain chunks
    embedding.py   the packaged all-MiniLM-L6-v2 (embeddings and its tokenizer)
    store.py       the Qdrant local-mode index: build it, retrieve from it
    plugin.py      the `rag` alternative (and the citation line of always-on mode)
    scoreboard.py  RAG win rate with a Wilson interval, overall and per topic
    cli.py         `tuneloop rag index DIR` and `tuneloop rag report`

Importing this package (or `plugin.py`) loads no model and no heavy library.
"""
