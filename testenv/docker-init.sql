-- The agent's role and database in the Docker PostgreSQL (tools/testenv.sh does the same).
CREATE ROLE sync LOGIN REPLICATION CREATEDB PASSWORD 'sync';
CREATE DATABASE app OWNER sync;
\connect app
SET ROLE sync;
\i /demo/demo.sql
