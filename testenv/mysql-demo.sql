-- The demo schema `make run-mysql` loads into MariaDB's `app` database (idempotent).
CREATE TABLE IF NOT EXISTS users (
  id bigint PRIMARY KEY,
  email varchar(200) NOT NULL,
  name varchar(100),
  created_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);
CREATE TABLE IF NOT EXISTS order_items (
  order_id bigint, line int, sku varchar(20) NOT NULL, qty int NOT NULL,
  PRIMARY KEY (order_id, line)
);
INSERT IGNORE INTO users (id, email, name) VALUES (1, 'ada@example.com', 'Ada'), (2, 'grace@example.com', 'Grace');
INSERT IGNORE INTO order_items VALUES (1001, 1, 'SKU-1', 2), (1001, 2, 'SKU-2', 1);
