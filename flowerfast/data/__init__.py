"""Photos on disk: finding and checking them, decoding and caching, the split and the DataLoaders."""
