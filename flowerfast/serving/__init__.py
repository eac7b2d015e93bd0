"""A trained model behind a web page and a JSON API."""
