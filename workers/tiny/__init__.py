"""Tiny random-weight models, built offline for the tests, the demo and the benchmarks.

Each is made from the real model classes with tiny configs, saved with save_pretrained and loaded
back by its worker through the same from_pretrained path as real weights. Every builder follows
the one rule of workers/tiny/build.py (cache folder, stamp, rebuild, publish).

    sd3.py     build_tiny_sd3: Stable Diffusion 3 (noise images)
    llama4.py  build_tiny_llama4: a Llama 4 text model (gibberish text)
    clip.py    build_tiny_clip: CLIP for the retrieval index
"""
