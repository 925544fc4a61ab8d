-- 1-hour aggregates in 7-day chunks (were 30 days; existing chunks keep theirs). Once a
-- chunk is closed, maintenance CLUSTERs it on (series_id, bucket), so a device's buckets
-- lie together on disk: a 30-day read of one device (5 metrics x 720 hours) touched 385
-- buffers in the benchmark's database, ~30 per metric in each clustered 7-day chunk (168
-- buckets) and ~50 for 70 buckets in the open, unclustered one (one page per bucket).
-- Pages matter for a connection's first touch and for reads from disk. With 30-day
-- chunks the chunk still being written would hold most of any 30-day range.
SELECT set_chunk_time_interval('storage.readings_1h', interval '7 days');
