"""Values and pure functions: ids, geography, geohash cells, snowflake ids, chat messages and
the records of durable changes. Imports nothing else of geopresence."""
