"""vidlab.data"""
