"""vaes4rs: how well do pre-trained natural-image VAEs reconstruct remote-sensing imagery?"""

__version__ = "0.1.0"
