"""vidlab.bench"""
