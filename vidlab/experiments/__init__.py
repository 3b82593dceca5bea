"""ShapesBench experiments that test each system's central claim end to end (`vidlab experiment ...`)."""
