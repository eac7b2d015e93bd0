"""Networks and their weights: architectures of both libraries, pretrained sources, the saved classifier."""
