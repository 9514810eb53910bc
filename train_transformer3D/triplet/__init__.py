"""SENet triplet network: model, losses, data, trainer and the train_senet_triplet.py entry point."""
