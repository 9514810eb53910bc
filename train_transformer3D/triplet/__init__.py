"""The SENet triplet trainer entry point (train_senet_triplet.py); its library is myutils/face/."""
