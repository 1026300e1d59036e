SELECT src_offset FROM messages WHERE src_topic = ?1 AND src_partition = ?2 AND src_offset >= ?3 AND src_topic_id = ?4
