"""osplab.train"""
