"""The synthetic audio-visual dataset (real Kinetics-400 / AudioSet label names, synthesized
sounds and moving shapes) and the embedded AST tagger trained on its sounds."""
