"""Audio side: AST fbank features and the frozen tagger (paper 3.3)."""
