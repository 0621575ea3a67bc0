"""Where usage events go beyond the platform (adapter): ``openmeter``, forwarding to OpenMeter."""
