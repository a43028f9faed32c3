"""osplab.metrics"""
