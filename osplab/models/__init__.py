"""osplab.models"""
