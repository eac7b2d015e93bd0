"""``flowerfast compare`` and ``flowerfast report``."""
