"""Operations: logs, metrics, the journal of open uploads, the sweeper, doctor."""
