"""Live quota alerts and call-start notices: the engine, the sinks and the delivery of each alert."""
