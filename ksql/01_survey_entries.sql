-- Survey entries as the Telegram bot produces them (talk, slides 26 and 40).
-- Key: the survey_id string. Value: Avro record survey.bot.surveyEntry
-- (survey_id, user_id, name, company, location, response); the columns are
-- inferred from the value schema registered for the topic, so register it
-- (produce one entry, or `survey-kit topics create`) before applying this file.
CREATE STREAM IF NOT EXISTS survey_entries WITH (
  kafka_topic = 'survey-entries',
  value_format = 'AVRO'
);
