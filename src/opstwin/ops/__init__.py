"""Operations: health, readiness, Prometheus metrics, logging."""
