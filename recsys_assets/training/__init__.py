"""Training metadata and models: vocab, multi-task ranker, two-tower retrieval, offline evaluation."""
