"""osplab.stages"""
