"""The Stable Diffusion 3 worker (`jobhive-worker sd3`): text-to-image and image-to-image,
several images per call, latent previews. worker.py holds SD3Worker and its settings."""
