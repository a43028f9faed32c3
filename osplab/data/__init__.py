"""osplab.data"""
