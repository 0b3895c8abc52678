-- The agent's privileges and a demo table in the Docker MariaDB / MySQL (app database).
GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'sync'@'%';
CREATE TABLE IF NOT EXISTS app.users (
  id bigint PRIMARY KEY,
  email varchar(200) NOT NULL,
  name varchar(100)
);
INSERT IGNORE INTO app.users VALUES (1, 'ada@example.com', 'Ada'), (2, 'grace@example.com', 'Grace');
