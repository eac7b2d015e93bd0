"""Using a trained model without fastai: loading, preprocessing, prediction, evaluation, latency."""
