-- The demo schema `make run` loads into the `app` database (idempotent).
CREATE TABLE IF NOT EXISTS users (
  id bigint PRIMARY KEY,
  email text NOT NULL,
  name text,
  tags text[],
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SCHEMA IF NOT EXISTS billing;
CREATE TABLE IF NOT EXISTS billing.invoices (
  id uuid PRIMARY KEY,
  user_id bigint NOT NULL,
  amount numeric(12,2) NOT NULL,
  paid boolean NOT NULL DEFAULT false,
  details jsonb
);
CREATE TABLE IF NOT EXISTS order_items (
  order_id bigint,
  line int,
  sku text NOT NULL,
  qty int NOT NULL,
  PRIMARY KEY (order_id, line)
);
INSERT INTO users (id, email, name, tags) VALUES
  (1, 'ada@example.com', 'Ada', '{admin,ops}'),
  (2, 'grace@example.com', 'Grace', '{}'),
  (3, 'linus@example.com', NULL, NULL)
ON CONFLICT DO NOTHING;
INSERT INTO billing.invoices (id, user_id, amount, paid, details) VALUES
  ('7c9e6679-7425-40de-944b-e07fc1f90ae7', 1, 12.50, true, '{"lines": 2}'),
  ('16fd2706-8baf-433b-82eb-8c7fada847da', 2, 99.00, false, NULL)
ON CONFLICT DO NOTHING;
INSERT INTO order_items VALUES (1001, 1, 'SKU-1', 2), (1001, 2, 'SKU-2', 1), (1002, 1, 'SKU-1', 5)
ON CONFLICT DO NOTHING;
