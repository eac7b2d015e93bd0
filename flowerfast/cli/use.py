"""``flowerfast predict``, ``flowerfast evaluate`` and ``flowerfast export``."""
