"""Pure decisions over plain data: queue order, placement, pool sizing, status."""
