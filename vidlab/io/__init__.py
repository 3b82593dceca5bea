"""Video input: decoding, probing, audio, frame sampling."""
