SELECT COALESCE(MAX(src_offset), -1) FROM messages WHERE src_topic = ?1 AND src_partition = ?2 AND src_topic_id = ?3
