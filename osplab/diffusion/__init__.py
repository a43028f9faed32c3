"""osplab.diffusion"""
